"""Depth beyond one machine on Ray: batch inference on Ray Data (``depth-batch``) and a service on Ray Serve
(``depth-serve``). Needs the ``cluster`` extra (``pip install 'agdepth[cluster]'``)."""
