"""
ROS 2 nodes: thin adapters around the core (the only modules of the package importing rclpy).

- :mod:`.policy_node`: sensors -> Policy -> ActionChunk, PruningStats, command stream.
- :mod:`.diagnostics_node`: PruningStats + policy status -> /diagnostics.
- :mod:`.player`: ``vla-pruned-ros play``, a rosbag2 onto the graph (with /clock).
- :mod:`.up`: ``vla-pruned-ros up``, both nodes in one process.
- :mod:`.graph_demo`: play a bag into the running nodes and tabulate /diagnostics per pruner.
- :mod:`.params`: every parameter's declaration; :mod:`.runtime`: start/spin/stop.
"""
