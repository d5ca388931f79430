"""jaxbp."""
