"""Reproductions of the papers' figures, the Colab notebook and the Cloud TPU pod launch."""
