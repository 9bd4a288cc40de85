"""Settlement: the typed record of a finished request, the batch writer, the disk spool."""
