"""Writes of the training app.

``runs`` creates, queues, cancels and retries runs and sweeps (ORM only, cheap to import in the
web process); ``engine`` is the one adapter between the ORM and the PyTorch engine
(``training.mil``): it trains, infers and loads models.
"""
