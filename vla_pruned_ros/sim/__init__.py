"""MuJoCo tabletop benchmark: scene, tasks, environment, scripted experts, bag recorder."""
