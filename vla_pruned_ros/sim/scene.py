"""
The tabletop scene: its description, the MJCF built from it, and the running MuJoCo model.

World frame: x to the right of the camera, y away from it, z up; the table top is the plane
z = 0. The gripper is a floating two-finger hand (no arm) driven by position actuators on
x, y, z and yaw; it always points down, so roll and pitch stay 0. Its tool centre point (TCP)
is the middle of the grasp, 1.5 cm above the fingertips.

Rendering is offscreen through ``mujoco.Renderer``; on a machine without a display set
``MUJOCO_GL=egl`` before MuJoCo is imported (this module sets it when it is unset).
"""

from dataclasses import dataclass, field
import math
import os
from typing import Optional

import numpy as np

from vla_pruned_ros.camera import CameraIntrinsics, look_at_pose

# Headless rendering needs EGL; respect a value the user chose (glfw, osmesa).
os.environ.setdefault('MUJOCO_GL', 'egl')

import mujoco  # after MUJOCO_GL is set: the GL backend is chosen at import

# Named colours (linear RGB in [0, 1]) that objects and zones may take.
COLOURS: dict[str, tuple[float, float, float]] = {
    'red': (0.85, 0.10, 0.10),
    'green': (0.10, 0.70, 0.15),
    'blue': (0.10, 0.25, 0.90),
    'yellow': (0.95, 0.85, 0.10),
    'orange': (1.00, 0.50, 0.05),
    'purple': (0.50, 0.15, 0.75),
    'cyan': (0.10, 0.80, 0.85),
    'pink': (1.00, 0.45, 0.70),
}

# Shapes and the MuJoCo geom that draws each. A 'block' is an elongated box: it only fits
# the gripper across its short side, so grasping it needs yaw.
SHAPES: dict[str, str] = {
    'cube': 'box',
    'block': 'box',
    'cylinder': 'cylinder',
    'sphere': 'sphere',
}

TABLE_HALF_SIZE = (0.40, 0.35)
# Fingertips sit this far below the TCP.
TCP_ABOVE_FINGERTIPS = 0.015
# Largest opening of one finger from the centre line (full gap: twice this).
FINGER_MAX_OPENING = 0.045
FINGER_HALF_SIZE = (0.02, 0.005, 0.03)
PALM_HALF_SIZE = (0.022, 0.06, 0.01)

# Reachable TCP box (metres, world frame) and yaw range (rad).
TCP_LOW = np.array([-0.30, -0.25, TCP_ABOVE_FINGERTIPS])
TCP_HIGH = np.array([0.30, 0.30, 0.35])
YAW_LIMIT = math.pi


class SceneError(ValueError):
    """A scene description that cannot be built (unknown colour or shape, bad size)."""


@dataclass(frozen=True)
class ObjectSpec:
    """
    One loose object resting on the table.

    ``size`` is MuJoCo's geom size: half extents (x, y, z) for boxes, (radius, half height)
    for cylinders, (radius,) for spheres.
    """

    name: str
    colour: str
    shape: str
    size: tuple[float, ...]
    x: float
    y: float
    yaw: float = 0.0

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise SceneError(f'unknown colour {self.colour!r}; known: {sorted(COLOURS)}')
        if self.shape not in SHAPES:
            raise SceneError(f'unknown shape {self.shape!r}; known: {sorted(SHAPES)}')
        wanted = {'box': 3, 'cylinder': 2, 'sphere': 1}[SHAPES[self.shape]]
        if len(self.size) != wanted or min(self.size) <= 0:
            raise SceneError(
                f'{self.shape} {self.name!r} needs {wanted} positive size values, '
                f'got {self.size}'
            )

    @property
    def phrase(self) -> str:
        """Words that name the object in an instruction, e.g. 'red cube'."""
        return f'{self.colour} {self.shape}'

    @property
    def half_height(self) -> float:
        """Height of the object's centre above the table when it rests upright."""
        return self.size[0] if SHAPES[self.shape] == 'sphere' else self.size[-1]

    @property
    def footprint_radius(self) -> float:
        """Radius of the smallest vertical cylinder around the object."""
        if SHAPES[self.shape] == 'box':
            return math.hypot(self.size[0], self.size[1])
        return self.size[0]


@dataclass(frozen=True)
class ZoneSpec:
    """A coloured disc painted on the table (no collision)."""

    name: str
    colour: str
    x: float
    y: float
    radius: float = 0.06

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise SceneError(f'unknown colour {self.colour!r}; known: {sorted(COLOURS)}')


@dataclass(frozen=True)
class CameraSpec:
    """A fixed pinhole camera looking from ``position`` at ``target`` (world frame)."""

    position: tuple[float, float, float] = (0.0, -0.36, 0.42)
    target: tuple[float, float, float] = (0.0, 0.03, 0.0)
    fovy_deg: float = 50.0
    width: int = 224
    height: int = 224


@dataclass(frozen=True)
class SceneSpec:
    """Everything that differs between two scenes: objects, zones, gripper start, camera."""

    objects: tuple[ObjectSpec, ...]
    zones: tuple[ZoneSpec, ...] = ()
    # Gripper start: TCP x, y, z (metres) and yaw (rad).
    gripper_start: tuple[float, float, float, float] = (0.0, -0.18, 0.16, 0.0)
    camera: CameraSpec = field(default_factory=CameraSpec)


def _fmt(values: 'tuple[float, ...] | np.ndarray') -> str:
    return ' '.join(f'{v:.6g}' for v in values)


def _rgba(colour: str) -> str:
    return _fmt((*COLOURS[colour], 1.0))


def _camera_axes(camera: CameraSpec) -> np.ndarray:
    """Return MuJoCo's camera x (right) and y (up) axes; the camera looks along -z."""
    try:
        rotation = look_at_pose(camera.position, camera.target)[:3, :3]
    except ValueError as err:
        raise SceneError('camera looks straight up or down; give it a tilt') from err
    # the optical frame's y points down the image, MuJoCo's up
    return np.concatenate([rotation[:, 0], -rotation[:, 1]])


def _object_xml(obj: ObjectSpec) -> str:
    geom_type = SHAPES[obj.shape]
    # MuJoCo takes the larger friction of two touching geoms: objects and table slide at 0.5
    # (low enough that a pushed cylinder slides instead of tipping), finger pads grip at 1.
    # Rolling friction keeps a sphere from rolling away forever after a touch.
    friction = '0.5 0.01 0.001' if geom_type == 'sphere' else '0.5 0.01 0.0001'
    quat = (math.cos(obj.yaw / 2), 0.0, 0.0, math.sin(obj.yaw / 2))
    return (
        f'<body name="{obj.name}" pos="{_fmt((obj.x, obj.y, obj.half_height + 1e-4))}" '
        f'quat="{_fmt(quat)}">'
        f'<freejoint name="{obj.name}_free"/>'
        f'<geom name="{obj.name}_geom" type="{geom_type}" size="{_fmt(obj.size)}" '
        f'rgba="{_rgba(obj.colour)}" density="400" condim="6" friction="{friction}"/>'
        '</body>'
    )


def _zone_xml(zone: ZoneSpec) -> str:
    return (
        f'<geom name="{zone.name}" type="cylinder" size="{zone.radius:.6g} 0.0005" '
        f'pos="{_fmt((zone.x, zone.y, 0.0005))}" rgba="{_rgba(zone.colour)}" '
        'contype="0" conaffinity="0"/>'
    )


def build_mjcf(spec: SceneSpec) -> str:
    """Return the MJCF text of a scene."""
    fx, fy, fz = FINGER_HALF_SIZE
    px, py, pz = PALM_HALF_SIZE
    finger_z = fz - TCP_ABOVE_FINGERTIPS
    palm_z = 2 * fz - TCP_ABOVE_FINGERTIPS + pz
    tx, ty = TABLE_HALF_SIZE
    cam = spec.camera
    fingers = ''
    for side, sign in (('left', 1), ('right', -1)):
        fingers += (
            f'<body name="finger_{side}" gravcomp="1">'
            f'<joint name="finger_{side}" type="slide" axis="0 {sign} 0" '
            f'range="0 {FINGER_MAX_OPENING}" damping="2" armature="0.01"/>'
            f'<geom name="finger_{side}_geom" type="box" size="{_fmt(FINGER_HALF_SIZE)}" '
            f'pos="0 {sign * fy:.6g} {finger_z:.6g}" rgba="0.25 0.25 0.27 1" mass="0.05" '
            'condim="6" friction="1 0.02 0.001"/>'
            '</body>'
        )
    return f'''
<mujoco model="vla_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.002" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{max(cam.width, 640)}" offheight="{max(cam.height, 480)}"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0.05 0.05 0.05"/>
    <map znear="0.01" zfar="20"/>
  </visual>
  <worldbody>
    <light name="top" pos="0.2 -0.3 1.4" dir="-0.15 0.25 -1" diffuse="0.5 0.5 0.5"
           castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.22 0.22 0.24 1"/>
    <geom name="table" type="box" size="{tx} {ty} 0.025" pos="0 0 -0.025"
          rgba="0.62 0.60 0.57 1" friction="0.5 0.01 0.0001"/>
    <camera name="rgbd" mode="fixed" pos="{_fmt(cam.position)}"
            xyaxes="{_fmt(_camera_axes(cam))}" fovy="{cam.fovy_deg:.6g}"/>
    {''.join(_zone_xml(z) for z in spec.zones)}
    {''.join(_object_xml(o) for o in spec.objects)}
    <body name="gripper" gravcomp="1">
      <joint name="gripper_x" type="slide" axis="1 0 0" range="{TCP_LOW[0]} {TCP_HIGH[0]}"
             armature="0.1"/>
      <joint name="gripper_y" type="slide" axis="0 1 0" range="{TCP_LOW[1]} {TCP_HIGH[1]}"
             armature="0.1"/>
      <joint name="gripper_z" type="slide" axis="0 0 1"
             range="{TCP_LOW[2] - 0.01} {TCP_HIGH[2]}" armature="0.1"/>
      <joint name="gripper_yaw" type="hinge" axis="0 0 1"
             range="{-YAW_LIMIT - 0.1} {YAW_LIMIT + 0.1}" armature="0.01"/>
      <site name="tcp" size="0.004" rgba="1 1 1 0"/>
      <geom name="palm" type="box" size="{px} {py} {pz}" pos="0 0 {palm_z:.6g}"
            rgba="0.35 0.35 0.38 1" mass="0.4"/>
      {fingers}
    </body>
  </worldbody>
  <contact>
    <exclude body1="finger_left" body2="finger_right"/>
  </contact>
  <actuator>
    <position name="act_x" joint="gripper_x" kp="3000" kv="90" forcerange="-40 40"/>
    <position name="act_y" joint="gripper_y" kp="3000" kv="90" forcerange="-40 40"/>
    <position name="act_z" joint="gripper_z" kp="3000" kv="90" forcerange="-40 40"/>
    <position name="act_yaw" joint="gripper_yaw" kp="50" kv="1.4" forcerange="-5 5"/>
    <position name="act_finger_left" joint="finger_left" kp="300" kv="4" forcerange="-15 15"/>
    <position name="act_finger_right" joint="finger_right" kp="300" kv="4"
              forcerange="-15 15"/>
  </actuator>
</mujoco>
'''


class TabletopScene:
    """
    A compiled scene with its physics state and an offscreen RGB-D camera.

    Call :meth:`close` (or use it as a context manager) to free the rendering context.
    """

    def __init__(self, spec: SceneSpec) -> None:
        self.spec = spec
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(spec))
        self.data = mujoco.MjData(self.model)
        self._gripper_qpos = [self.model.joint(n).qposadr[0] for n in
                              ('gripper_x', 'gripper_y', 'gripper_z', 'gripper_yaw')]
        self._finger_qpos = [self.model.joint(n).qposadr[0] for n in
                             ('finger_left', 'finger_right')]
        self._tcp_site = self.model.site('tcp').id
        self._camera = self.model.camera('rgbd').id
        self._renderer: Optional[mujoco.Renderer] = None
        self.reset()

    # -- state -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Put every body back where the spec says, gripper open, and hold it there."""
        mujoco.mj_resetData(self.model, self.data)
        start = np.asarray(self.spec.gripper_start, dtype=float)
        self.data.qpos[self._gripper_qpos] = start
        self.data.qpos[self._finger_qpos] = FINGER_MAX_OPENING
        self.set_targets(start[:3], float(start[3]), closed=False)
        mujoco.mj_forward(self.model, self.data)

    def set_targets(self, position: np.ndarray, yaw: float, closed: bool) -> None:
        """Set the actuator targets: TCP position (m), yaw (rad) and the finger command."""
        self.data.ctrl[:3] = position
        self.data.ctrl[3] = yaw
        self.data.ctrl[4:6] = 0.0 if closed else FINGER_MAX_OPENING

    def advance(self, seconds: float) -> None:
        """Integrate the physics for ``seconds`` (rounded to whole time steps)."""
        steps = max(1, round(seconds / self.model.opt.timestep))
        mujoco.mj_step(self.model, self.data, nstep=steps)

    @property
    def time(self) -> float:
        """Simulated time in seconds since the last reset."""
        return float(self.data.time)

    def tcp_position(self) -> np.ndarray:
        """Return the TCP position (x, y, z) in the world frame."""
        return self.data.site_xpos[self._tcp_site].copy()

    def gripper_yaw(self) -> float:
        """Return the gripper yaw about world z (rad)."""
        return float(self.data.qpos[self._gripper_qpos[3]])

    def tcp_pose(self) -> np.ndarray:
        """Return the TCP pose as x y z qx qy qz qw (ROS quaternion order)."""
        half = self.gripper_yaw() / 2
        return np.array([*self.tcp_position(), 0.0, 0.0, math.sin(half), math.cos(half)])

    def finger_opening(self) -> np.ndarray:
        """Return each finger's distance from the centre line (left, right), in metres."""
        return self.data.qpos[self._finger_qpos].copy()

    def object_position(self, name: str) -> np.ndarray:
        """Return the world position of an object's centre."""
        return self.data.body(name).xpos.copy()

    def object_yaw(self, name: str) -> float:
        """Return the rotation of an object about world z (rad), from its local x axis."""
        xmat = self.data.body(name).xmat.reshape(3, 3)
        return math.atan2(xmat[1, 0], xmat[0, 0])

    def displace_object(self, name: str, offset_xy: 'tuple[float, float] | np.ndarray') -> None:
        """
        Move an object's centre horizontally by ``offset_xy`` (m) and stop it.

        A teleport, for recording perturbations (:mod:`vla_pruned_ros.sim.nudge`): the caller
        checks that the new place is free. The body keeps its height and rotation and loses
        its velocity, so it rests where it is put.
        """
        joint = self.model.joint(f'{name}_free')
        qpos, qvel = joint.qposadr[0], joint.dofadr[0]
        self.data.qpos[qpos:qpos + 2] += np.asarray(offset_xy, dtype=float)[:2]
        self.data.qvel[qvel:qvel + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def touching(self, body_a: str, body_b: str) -> bool:
        """Return True when any geom of ``body_a`` is in contact with one of ``body_b``."""
        a, b = self.model.body(body_a).id, self.model.body(body_b).id
        geom_body = self.model.geom_bodyid
        for contact in self.data.contact[: self.data.ncon]:
            pair = {geom_body[contact.geom1], geom_body[contact.geom2]}
            if pair == {a, b}:
                return True
        return False

    # -- camera ----------------------------------------------------------------------------

    @property
    def intrinsics(self) -> CameraIntrinsics:
        """Pinhole intrinsics of the RGB-D camera (same for colour and depth)."""
        cam = self.spec.camera
        return CameraIntrinsics.from_fov(cam.width, cam.height, cam.fovy_deg)

    def camera_to_world(self) -> np.ndarray:
        """
        Return the 4x4 transform from the camera's optical frame to the world frame.

        The optical frame follows ROS (REP 103): x right, y down, z forward, so a point
        back-projected from depth through :attr:`intrinsics` maps to the world with it.
        """
        rotation = self.data.cam_xmat[self._camera].reshape(3, 3)
        # MuJoCo cameras look along -z with y up; flip y and z to get the optical frame.
        transform = np.eye(4)
        transform[:3, :3] = rotation @ np.diag([1.0, -1.0, -1.0])
        transform[:3, 3] = self.data.cam_xpos[self._camera]
        return transform

    def _get_renderer(self) -> 'mujoco.Renderer':
        if self._renderer is None:
            cam = self.spec.camera
            self._renderer = mujoco.Renderer(self.model, height=cam.height, width=cam.width)
        return self._renderer

    def render(self) -> tuple[np.ndarray, np.ndarray]:
        """
        Render the camera view.

        Returns ``(rgb, depth)``: HxWx3 uint8 and HxW float32 depth along the optical axis in
        metres, NaN where the ray hits nothing.
        """
        renderer = self._get_renderer()
        renderer.update_scene(self.data, camera=self._camera)
        rgb = renderer.render().copy()
        renderer.enable_depth_rendering()
        try:
            renderer.update_scene(self.data, camera=self._camera)
            depth = renderer.render().astype(np.float32)
        finally:
            renderer.disable_depth_rendering()
        far = self.model.vis.map.zfar * self.model.stat.extent
        depth[depth >= 0.999 * far] = np.nan
        return rgb, depth

    def close(self) -> None:
        """Free the rendering context; the physics state stays usable."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self) -> 'TabletopScene':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
