"""The miniature world: a procedural text-to-video world, its attribute detectors and its pre-trained model."""
