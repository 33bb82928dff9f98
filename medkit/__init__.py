"""medkit: a Jupyter-first reproducibility kit for MedResearcher-R1.

The numbered notebooks under ``notebooks/`` narrate the stages and call these modules (one module
per concept; README.md has the same map):

* 01 entity mining — :mod:`kb`, :mod:`sources`, :mod:`ner`, :mod:`mining`, :mod:`pubmed`
* 02 KG construction — :mod:`kg`
* 03 question generation — :mod:`subgraph`, :mod:`questions`, :mod:`qgen`, :mod:`calibration`,
  :mod:`specialty`, :mod:`retriever`
* 04 trajectories — :mod:`tools`, :mod:`agent`, :mod:`synthesis`, :mod:`grounding`,
  :mod:`recovery`, :mod:`trajectories`, :mod:`judge`
* 05 SFT and evaluation — :mod:`sft`, :mod:`adapters`, :mod:`evaluation`, :mod:`bootstrap`
* 06 GRPO — :mod:`grpo`, :mod:`rewards`
* 07 evaluation and benchmarks — :mod:`evaluation`, :mod:`reported`; public benchmarks —
  :mod:`medbrowsecomp`, :mod:`web` (the web tools), :mod:`endpoint` (``eval-endpoint``)
* every notebook — :mod:`profiles` (parameters), :mod:`paths`, :mod:`io`, :mod:`plots`,
  :mod:`notebook_output`, :mod:`records` (schemas of the files read); generation — :mod:`model`, :mod:`llm`, :mod:`engine`,
  :mod:`openvino_engine`, :mod:`vllm_engine` (GPU only); running — :mod:`pipeline`,
  :mod:`notebook_sources`, :mod:`cli`, :mod:`wheels`, :mod:`errors`
"""

__version__ = "0.1.0"
