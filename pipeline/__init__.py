"""One thin script per DVC stage: read params, call the convvae library, write outputs."""
