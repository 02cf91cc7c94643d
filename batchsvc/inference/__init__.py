"""From a request line to an engine call and back: validation, sampling, engine, outputs, models."""
