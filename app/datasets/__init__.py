"""Training data: upload validation by format, stored files, previews and the data card's routes."""
