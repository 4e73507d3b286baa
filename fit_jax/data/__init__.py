"""Faces for training and for the tools: the input pipeline (folders, TFDS,
synthetic faces, packs), landmark files, pairs files, image decoding and the
crops of faces in photos."""
