"""sentinel's common package: schemas, stream names, the Redis Streams bus, settings, runtime."""
