"""DSTRTD bot: everything about posting — configuration, topics, captions,
posters, publishers, the store, the scheduler and the command line.

It asks ``generators`` for images and knows nothing about how they are made.
"""

__version__ = "0.1.0"
