"""medkit: a Jupyter-first reproducibility kit for MedResearcher-R1.

Each stage of the paper's pipeline has one module here; the numbered notebooks
under ``notebooks/`` narrate the stages and call these modules. See README.md.
"""

__version__ = "0.1.0"
