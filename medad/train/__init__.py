"""Training loops and experiment drivers (:mod:`medad.train.segmentation`, :mod:`medad.train.prob_unet_experiment`)."""
