"""Teacher and student models: building, the masked-positions forward, vocabulary surgery, checks."""
