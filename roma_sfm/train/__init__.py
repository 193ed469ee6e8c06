"""Training: losses (losses.py), pairs with dense GT (data.py), the loop (trainer.py).

Entry points: ``roma_sfm.train.trainer.train(TrainConfig(...))`` and
``roma_sfm.train.trainer.main(argv)`` (``python -m roma_sfm.train.trainer --help``).
Kept import-light: import the submodules you need.
"""
