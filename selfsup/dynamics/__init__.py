"""Dynamics: state that changes between steps besides gradients, shared by methods and engine.

EMA targets (:mod:`.ema`), queues (:mod:`.queue`), memory banks (:mod:`.bank`), split and shuffled batch
norm (:mod:`.batchnorm`) and k-means for the clustering methods (:mod:`.kmeans`).
"""
