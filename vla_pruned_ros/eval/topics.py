"""
Which bag topic plays which role (rgb, depth, camera_info, cloud, ...), found by message type.

Camera drivers name their topics differently (RealSense ``/camera/camera/color/image_raw`` and
``/camera/camera/aligned_depth_to_color/image_raw``, ZED ``/zed/zed_node/rgb/image_rect_color``
and ``/zed/zed_node/depth/depth_registered``, Orbbec ``/camera/color/image_raw`` and
``/camera/depth/image_raw``, the simulator ``/camera/depth/image_rect_raw``), so a role is
filled by the topics of the right message type first, then ranked by name:

- depth: an Image whose first message has a depth encoding (16UC1, mono16, 32FC1); names with
  'depth' and 'aligned'/'registered' (registered to the colour camera) rank first, confidence,
  disparity and infrared images last;
- rgb: an Image with a colour encoding (rgb8, bgr8, rgba8, bgra8; mono8 only when there is no
  colour image) in an 'rgb'/'color' namespace, rectified before raw, never right/infrared;
- camera_info: the CameraInfo in the rgb image's namespace, else in the depth image's;
- cloud: the PointCloud2, 'registered' first; instruction: a String named like an instruction
  or prompt; episode: a String named 'episode'; pose: a PoseStamped named like an end effector;
  actions: an ActionChunk, else a TwistStamped, that is not the policy node's own output (in
  the ``/vla`` namespace, or beside a PruningStats topic as the node publishes them).

When two topics tie for a role the bag is ambiguous: :class:`EvalError` names the candidates
and the command-line flag that picks one. Every role can be given explicitly, and optional
roles can be switched off with the topic name ``none``.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import re
from typing import Optional

from vla_pruned_ros.eval.errors import EvalError

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
POINT_CLOUD = 'sensor_msgs/msg/PointCloud2'
STRING = 'std_msgs/msg/String'
POSE = 'geometry_msgs/msg/PoseStamped'
TWIST = 'geometry_msgs/msg/TwistStamped'
ACTION_CHUNK = 'vla_pruned_ros/msg/ActionChunk'
POINT = 'geometry_msgs/msg/PointStamped'
# Simulator truth the recorder adds (the named object's centre per observation): a training
# label, never a policy input, so no role reads it.
TARGET_POSITION_TOPIC = '/sim/target_position'
PRUNING_STATS = 'vla_pruned_ros/msg/PruningStats'

# Topic name that switches an optional role off.
NONE = 'none'
# A namespace the policy node's outputs are expected in; they are never ground truth.
NODE_NAMESPACE = 'vla'
# What the node publishes beside its pruning_stats.
NODE_OUTPUTS = ('action_chunk', 'cmd_twist')

COLOUR_ENCODINGS = frozenset({'rgb8', 'bgr8', 'rgba8', 'bgra8'})
MONO_ENCODINGS = frozenset({'mono8', '8uc1'})
DEPTH_ENCODINGS = frozenset({'16uc1', 'mono16', '32fc1'})

# role -> (command-line flag, message types that may fill it)
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    'rgb': ('--rgb-topic', (IMAGE,)),
    'depth': ('--depth-topic', (IMAGE,)),
    'camera_info': ('--info-topic', (CAMERA_INFO,)),
    'cloud': ('--cloud-topic', (POINT_CLOUD,)),
    'instruction': ('--instruction-topic', (STRING,)),
    'episode': ('--episode-topic', (STRING,)),
    'pose': ('--pose-topic', (POSE,)),
    'actions': ('--action-topic', (ACTION_CHUNK, TWIST)),
}
POINT_SOURCES = ('auto', 'depth', 'cloud')


@dataclass(frozen=True)
class BagTopic:
    """
    One topic of a bag as discovery sees it.

    ``encoding`` is the encoding of the first decodable Image message ('' otherwise) and
    ``size`` the (width, height) of the first decodable Image or CameraInfo message.
    """

    name: str
    msgtype: str
    count: int = 0
    encoding: str = ''
    size: Optional[tuple[int, int]] = None


@dataclass
class TopicPlan:
    """
    The topic chosen for every role (None: not in the bag or switched off).

    ``points_from`` says where the 3D tokens come from: 'depth' (depth image back-projected
    through camera_info) or 'cloud' (the PointCloud2). ``notes`` explains choices a user may
    want to know about (a fallback, an ignored topic).
    """

    rgb: str
    depth: Optional[str] = None
    camera_info: Optional[str] = None
    cloud: Optional[str] = None
    instruction: Optional[str] = None
    episode: Optional[str] = None
    pose: Optional[str] = None
    actions: Optional[str] = None
    action_type: Optional[str] = None
    points_from: str = 'depth'
    notes: list[str] = field(default_factory=list)

    def roles(self) -> dict[str, Optional[str]]:
        """Return role -> topic for every role, in a fixed order."""
        return {role: getattr(self, role) for role in ROLES}

    def used_topics(self) -> list[str]:
        """Return the topics the replay reads (the unused 3D source is left out)."""
        roles = self.roles()
        if self.points_from == 'depth':
            roles.pop('cloud')
        else:
            roles.pop('depth')
        return [topic for topic in roles.values() if topic]


def _tokens(text: str) -> set[str]:
    return set(re.findall('[a-z]+', text.lower()))


def _namespace(name: str) -> str:
    return name.rsplit('/', 1)[0]


def _has(name: str, *words: str, namespace_only: bool = False) -> bool:
    tokens = _tokens(_namespace(name) if namespace_only else name)
    return any(word in tokens for word in words)


def _rank_depth(topic: BagTopic) -> int:
    score = 4 * _has(topic.name, 'depth') + 2 * _has(topic.name, 'aligned', 'registered')
    score -= 6 * _has(topic.name, 'confidence', 'disparity', 'ir', 'infra', 'infrared')
    return score


def _rank_rgb(topic: BagTopic) -> int:
    score = 4 * _has(topic.name, 'rgb', 'color', 'colour', namespace_only=True)
    score += _has(topic.name, 'rect')
    score -= 2 * _has(topic.name, 'raw', namespace_only=True)
    score -= 6 * _has(topic.name, 'right', 'ir', 'infra', 'infrared', 'stereo', 'depth')
    return score


def _rank_cloud(topic: BagTopic) -> int:
    return 2 * _has(topic.name, 'registered', 'aligned')


def _rank_instruction(topic: BagTopic) -> int:
    return 4 * _has(topic.name, 'instruction', 'instructions') + 2 * _has(
        topic.name, 'prompt', 'language', 'task'
    )


def _rank_episode(topic: BagTopic) -> int:
    return 4 * _has(topic.name, 'episode', 'episodes')


def _rank_pose(topic: BagTopic) -> int:
    return 4 * _has(topic.name, 'ee', 'eef', 'tcp', 'effector', 'tool', 'gripper') + _has(
        topic.name, 'pose'
    )


def _rank_actions(topic: BagTopic) -> int:
    return 2 * _has(topic.name, 'expert', 'teleop', 'demo', 'recorded', 'label', 'command')


def node_outputs(topics: Sequence[BagTopic]) -> set[str]:
    """
    Return the names of the topics the policy node published (its predictions, not labels).

    The node publishes ``action_chunk`` and ``cmd_twist`` beside ``pruning_stats`` in its
    namespace; everything under ``/vla`` (the namespace of this package's examples) counts too.
    """
    spaces = {_namespace(t.name) for t in topics if t.msgtype == PRUNING_STATS}
    return {
        t.name for t in topics
        if t.name.strip('/').split('/')[0] == NODE_NAMESPACE
        or (_namespace(t.name) in spaces and t.name.rsplit('/', 1)[1] in NODE_OUTPUTS)
    }


class _Chooser:
    """Resolves roles one by one: explicit names first, then the best-ranked candidate."""

    def __init__(self, topics: Sequence[BagTopic], overrides: Mapping[str, Optional[str]]):
        self.topics = list(topics)
        self.by_name = {topic.name: topic for topic in self.topics}
        unknown = sorted(set(overrides) - set(ROLES))
        if unknown:
            raise EvalError(f'unknown topic roles {unknown}; known: {list(ROLES)}')
        self.overrides = {role: value for role, value in overrides.items() if value}

    def of_type(self, *msgtypes: str) -> list[BagTopic]:
        return [topic for topic in self.topics if topic.msgtype in msgtypes]

    def explicit(self, role: str) -> Optional[BagTopic]:
        """Return the topic given for ``role``; raise when it is missing or of the wrong type."""
        flag, msgtypes = ROLES[role]
        name = self.overrides[role]
        topic = self.by_name.get(name)
        if topic is None:
            present = ', '.join(t.name for t in self.of_type(*msgtypes)) or 'none'
            raise EvalError(
                f'{flag} {name}: no such topic in the bag ({" or ".join(msgtypes)} topics '
                f'there: {present})'
            )
        if topic.msgtype not in msgtypes:
            raise EvalError(
                f'{flag} {name}: the topic holds {topic.msgtype}, expected '
                f'{" or ".join(msgtypes)}'
            )
        return topic

    def choose(
        self,
        role: str,
        candidates: Sequence[BagTopic],
        rank: Callable[[BagTopic], int],
        minimum: Optional[int] = None,
    ) -> Optional[BagTopic]:
        """Return the explicit topic, else the single best candidate (None when there is none)."""
        if role in self.overrides:
            if self.overrides[role] == NONE:
                return None
            return self.explicit(role)
        scored = [(rank(topic), topic) for topic in candidates]
        if minimum is not None:
            scored = [(score, topic) for score, topic in scored if score >= minimum]
        if not scored:
            return None
        best = max(score for score, _ in scored)
        top = [topic for score, topic in scored if score == best]
        if len(top) > 1:
            names = ', '.join(sorted(topic.name for topic in top))
            raise EvalError(
                f'ambiguous {role} topic: {names} fit equally well; pass {ROLES[role][0]} NAME'
                + (f' (or {ROLES[role][0]} {NONE} to ignore them)' if role != 'rgb' else '')
            )
        return top[0]


def _describe_images(images: Sequence[BagTopic]) -> str:
    if not images:
        return 'none'
    return ', '.join(f'{t.name} ({t.encoding or "undecodable"})' for t in images)


def plan_topics(
    topics: Sequence[BagTopic],
    overrides: Optional[Mapping[str, Optional[str]]] = None,
    points_from: str = 'auto',
    needs_pose: bool = False,
) -> TopicPlan:
    """
    Choose the topic of every role among ``topics`` (see the module docstring).

    ``overrides`` maps roles to topic names (or ``'none'``); ``points_from`` is 'auto' (depth
    with camera_info when usable, else the cloud), 'depth' or 'cloud'; ``needs_pose`` resolves
    the end-effector pose (a model with proprioception reads it). Raises :class:`EvalError`
    when no usable rgb image or 3D input exists, when a role is ambiguous, or when an explicit
    topic is missing or has another type.
    """
    if points_from not in POINT_SOURCES:
        raise EvalError(f'points_from must be one of {POINT_SOURCES}, got {points_from!r}')
    chooser = _Chooser(topics, overrides or {})
    notes: list[str] = []
    images = chooser.of_type(IMAGE)

    depth_images = [t for t in images if t.encoding.lower() in DEPTH_ENCODINGS]
    depth = chooser.choose('depth', depth_images, _rank_depth)
    if depth is not None and depth.encoding and depth.encoding.lower() not in DEPTH_ENCODINGS:
        raise EvalError(
            f'--depth-topic {depth.name}: encoding {depth.encoding!r} is not a depth encoding '
            '(16UC1, mono16, 32FC1)'
        )

    rgb = _choose_rgb(chooser, images, depth)
    camera_info = chooser.choose(
        'camera_info',
        chooser.of_type(CAMERA_INFO),
        lambda t: 4 * (_namespace(t.name) == _namespace(rgb.name))
        + 2 * (depth is not None and _namespace(t.name) == _namespace(depth.name))
        + (t.size is not None and t.size == rgb.size),
    )
    source = _choose_points_source(chooser, points_from, rgb, depth, camera_info, notes)
    cloud = None
    if source == 'cloud':
        cloud = chooser.choose('cloud', chooser.of_type(POINT_CLOUD), _rank_cloud)
        if camera_info is not None and rgb.size and camera_info.size not in (None, rgb.size):
            notes.append(
                f'camera_info {camera_info.name} is {_size(camera_info.size)}, the rgb image '
                f'{_size(rgb.size)}: ignored, so 3D groups are not linked to 2D patches'
            )
            camera_info = None
        elif camera_info is None:
            notes.append('no camera_info: 3D groups are not linked to 2D patches')

    strings = chooser.of_type(STRING)
    instruction = chooser.choose('instruction', strings, _rank_instruction, minimum=1)
    episode = chooser.choose('episode', strings, _rank_episode, minimum=1)
    pose = None
    if needs_pose:
        pose = chooser.choose('pose', chooser.of_type(POSE), _rank_pose)
        if pose is None:
            raise EvalError(
                'the model reads the end-effector pose (proprioception) but the bag has no '
                f'{POSE} topic; pass --pose-topic NAME'
            )
    outputs = node_outputs(topics)
    actions = chooser.choose(
        'actions',
        [t for t in chooser.of_type(ACTION_CHUNK) if t.name not in outputs]
        or [t for t in chooser.of_type(TWIST) if t.name not in outputs],
        _rank_actions,
    )
    return TopicPlan(
        rgb=rgb.name,
        depth=depth.name if depth is not None and source == 'depth' else None,
        camera_info=camera_info.name if camera_info is not None else None,
        cloud=cloud.name if cloud is not None else None,
        instruction=instruction.name if instruction is not None else None,
        episode=episode.name if episode is not None else None,
        pose=pose.name if pose is not None else None,
        actions=actions.name if actions is not None else None,
        action_type=actions.msgtype if actions is not None else None,
        points_from=source,
        notes=notes,
    )


def _size(size: Optional[tuple[int, int]]) -> str:
    return f'{size[0]}x{size[1]}' if size else 'of unknown size'


def _choose_rgb(
    chooser: _Chooser, images: Sequence[BagTopic], depth: Optional[BagTopic]
) -> BagTopic:
    if 'rgb' in chooser.overrides:
        if chooser.overrides['rgb'] == NONE:
            raise EvalError('--rgb-topic cannot be none: the policy needs an rgb image')
        return chooser.explicit('rgb')
    others = [t for t in images if depth is None or t.name != depth.name]
    colour = [t for t in others if t.encoding.lower() in COLOUR_ENCODINGS]
    candidates = colour or [t for t in others if t.encoding.lower() in MONO_ENCODINGS]
    rgb = chooser.choose('rgb', candidates, _rank_rgb)
    if rgb is None:
        compressed = chooser.of_type(COMPRESSED_IMAGE)
        hint = ''
        if compressed:
            hint = (
                f'; compressed images ({", ".join(t.name for t in compressed)}) are not '
                'supported: record the raw topic or decompress with image_transport republish'
            )
        raise EvalError(
            f'no usable rgb image in the bag (Image topics: {_describe_images(images)}){hint}; '
            'pass --rgb-topic NAME'
        )
    return rgb


def _choose_points_source(
    chooser: _Chooser,
    points_from: str,
    rgb: BagTopic,
    depth: Optional[BagTopic],
    camera_info: Optional[BagTopic],
    notes: list[str],
) -> str:
    """Return 'depth' or 'cloud': where the 3D tokens of every observation come from."""
    explicit_cloud = chooser.overrides.get('cloud', NONE) != NONE
    if points_from == 'auto' and explicit_cloud and 'depth' not in chooser.overrides:
        return 'cloud'  # a cloud named on the command line is meant to be used
    problem = ''
    if depth is None:
        problem = 'no depth image (16UC1, mono16 or 32FC1)'
    elif camera_info is None:
        problem = f'no camera_info for the depth image {depth.name}'
    elif rgb.size and depth.size and depth.size != rgb.size:
        problem = (
            f'depth {depth.name} is {_size(depth.size)} but rgb {rgb.name} is '
            f'{_size(rgb.size)}: depth must be registered to the colour camera (RealSense: '
            'align_depth.enable:=true)'
        )
    elif rgb.size and camera_info.size and camera_info.size != rgb.size:
        problem = (
            f'camera_info {camera_info.name} is {_size(camera_info.size)} but rgb {rgb.name} '
            f'is {_size(rgb.size)}'
        )
    if points_from == 'depth' or (points_from == 'auto' and not problem):
        if problem:
            raise EvalError(f'cannot use depth: {problem}')
        return 'depth'
    clouds = chooser.of_type(POINT_CLOUD)
    if chooser.overrides.get('cloud') == NONE or not clouds:
        raise EvalError(
            f'no 3D input: {problem or "--points-from cloud"} and no PointCloud2 topic; '
            'pass --depth-topic/--info-topic or --cloud-topic'
        )
    if points_from == 'auto':
        notes.append(f'3D tokens from the point cloud: {problem}')
    return 'cloud'
