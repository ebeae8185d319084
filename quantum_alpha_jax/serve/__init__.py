"""The decision service: per-bar streaming features and decisions (issue 16).

`stream` keeps, per symbol, the rolling state that turns one closed kline at a
time into the 44 features of `data.features.FEATURES`, equal to the batch path
row for row; `decider` runs the exported models on top of it.
"""
