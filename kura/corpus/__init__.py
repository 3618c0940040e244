"""The bundled default corpus (generated, seeded) and readers for real corpus folders."""
