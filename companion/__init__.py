"""Companion package for 'Build a Large Language Model From Scratch'.

Modules follow the data flow: data -> tokenizer -> bigram/model -> train -> generate;
`checks` holds the exercises' self-checks, `plots` and `widgets` the shared figures and knobs.
"""
__version__ = "0.1.0"
