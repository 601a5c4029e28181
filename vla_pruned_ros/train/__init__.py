"""Behaviour cloning of the reference policy from recorded rosbag2 demonstrations."""
