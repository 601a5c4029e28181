"""
Rosbag replay evaluation: compare pruners on recorded bags, offline and from a live run.

``vla-pruned-ros eval`` reads rosbag2 bags (:mod:`.bag`, topics found by :mod:`.topics`),
steps dense and every pruned configuration on identical observations (:mod:`.replay`), scores
the action chunks (:mod:`.metrics`), optionally scores a recording of the node's outputs
(:mod:`.live`) and writes results.json, report.md and plots (:mod:`.report`).
"""
