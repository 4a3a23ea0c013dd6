"""Recording inside the training loops people already run: ``transformers.Trainer``
(:mod:`tracespec.integrations.transformers`) and Paddle's ``paddle.Model``
(:mod:`tracespec.integrations.paddle_hapi`). Each module imports its framework; this package
imports none."""
