"""
An ActionChunk published by one process arrives intact in another over DDS on this host.

Both peers are separate interpreters, as a policy node and a controller would be. Each waits
for the other to match before it publishes or listens (discovery sometimes takes seconds);
the domain id and localhost-only discovery come from test/conftest.py.
"""

import json
import os
import subprocess
import sys
import uuid

MATCH_TIMEOUT_S = 10.0

_COMMON = '''
import json, sys, time
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from vla_pruned_ros.msg import ActionChunk

TOPIC = sys.argv[1]
MATCH_TIMEOUT_S = float(sys.argv[2])
# transient local: a subscriber that matches a moment after the publish still gets the chunk
QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                 durability=DurabilityPolicy.TRANSIENT_LOCAL)

def spin_until(node, done, timeout):
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        rclpy.spin_once(node, timeout_sec=0.05)
    return True
'''

PUBLISHER = _COMMON + '''
rclpy.init()
node = rclpy.create_node('chunk_publisher')
pub = node.create_publisher(ActionChunk, TOPIC, QOS)
if not spin_until(node, lambda: pub.get_subscription_count() > 0, MATCH_TIMEOUT_S):
    print('publisher: no subscriber matched', file=sys.stderr)
    sys.exit(2)
msg = ActionChunk(horizon=2, action_dim=7, dt=0.1, action_space='eef_delta_xyz_rpy_gripper',
                  dimension_names=['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper'],
                  data=[k / 8.0 - 0.75 for k in range(14)])
msg.header.stamp.sec = 1234
msg.header.stamp.nanosec = 5678
msg.header.frame_id = 'panda_link0'
pub.publish(msg)
print('publisher: sent', flush=True)
spin_until(node, lambda: False, 3 * MATCH_TIMEOUT_S)  # stay until the test stops us
'''

SUBSCRIBER = _COMMON + '''
rclpy.init()
node = rclpy.create_node('chunk_subscriber')
received = []
node.create_subscription(ActionChunk, TOPIC, received.append, QOS)
if not spin_until(node, lambda: node.count_publishers(TOPIC) > 0, MATCH_TIMEOUT_S):
    print('subscriber: no publisher matched', file=sys.stderr)
    sys.exit(2)
if not spin_until(node, lambda: received, MATCH_TIMEOUT_S):
    print('subscriber: matched but received nothing', file=sys.stderr)
    sys.exit(3)
msg = received[0]
print(json.dumps({
    'stamp': [msg.header.stamp.sec, msg.header.stamp.nanosec],
    'frame_id': msg.header.frame_id,
    'horizon': msg.horizon,
    'action_dim': msg.action_dim,
    'dt': msg.dt,
    'action_space': msg.action_space,
    'dimension_names': list(msg.dimension_names),
    'data': list(msg.data),
}))
'''


def start(script: str, topic: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, '-c', script, topic, str(MATCH_TIMEOUT_S)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )


def test_action_chunk_crosses_processes():
    topic = f'/vla_pruned_ros_test/chunk_{uuid.uuid4().hex[:8]}'
    subscriber = start(SUBSCRIBER, topic)
    publisher = start(PUBLISHER, topic)
    try:
        sub_out, sub_err = subscriber.communicate(timeout=4 * MATCH_TIMEOUT_S)
    finally:
        publisher.kill()
        pub_out, pub_err = publisher.communicate()
    assert subscriber.returncode == 0, f'subscriber failed:\n{sub_err}\npublisher:\n{pub_err}'
    assert 'publisher: sent' in pub_out

    got = json.loads(sub_out.strip().splitlines()[-1])
    assert got['stamp'] == [1234, 5678]
    assert got['frame_id'] == 'panda_link0'
    assert (got['horizon'], got['action_dim']) == (2, 7)
    assert abs(got['dt'] - 0.1) < 1e-7  # float32 on the wire
    assert got['action_space'] == 'eef_delta_xyz_rpy_gripper'
    assert got['dimension_names'] == ['dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper']
    assert got['data'] == [k / 8.0 - 0.75 for k in range(14)]
