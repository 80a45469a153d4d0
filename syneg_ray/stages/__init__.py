"""One module per `syneg` command: synthesize, mine, mix, train (a package: the driver's trainer,
the worker loop and their Ray-free parts), evaluate and tune. `syneg run` chains them
(`syneg_ray.pipeline`); the encoder and search services they share live in `syneg_ray.services`."""
