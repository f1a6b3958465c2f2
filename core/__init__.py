"""Transfer Studio's engine: data, backbones, freezing, training, evaluation and export.

A plain library with no Streamlit import, so a script, a notebook or a test can drive it. The web pages in
`pages/` and the command line (`python -m core ...`) are thin layers over it.
"""

__version__ = "0.1.0"
