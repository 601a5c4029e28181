"""
``diagnostics_node``: the policy's health on ``/diagnostics``, once a second.

Subscribes to ``pruning_stats`` (PruningStats per step) and ``policy_status`` (the policy node's
input/fault status) and publishes a ``diagnostic_msgs/DiagnosticArray`` with one status,
'<node name>: policy': p50/p95 step latency, effective rate, tokens kept per modality, FLOPs
ratio and the speedup against dense measured on the same device, labelled with its source
('periodic dense step' or 'calibration'); WARN when the rate is below ``min_rate_hz`` or the
input is stale or missing, ERROR after a fault or when the policy node goes silent. Each update
is also logged as one compact line.

Uses ``diagnostic_updater`` where it is installed (a ROS 2 install), a plain publisher otherwise;
the status looks the same either way. Windows run on the node clock, so replay with
``use_sim_time`` works.
"""

from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node

from vla_pruned_ros.diagnostics import OK, HealthReport, PolicyMonitor, StepSample
from vla_pruned_ros.msg import PruningStats
from vla_pruned_ros.nodes.params import (
    check_value,
    declare,
    diagnostics_parameters,
    read_all,
    spec_by_name,
)

DESCRIPTION = "Publish the policy node's latency, rate, tokens and speedup on /diagnostics."
TASK_NAME = 'policy'
LIVE_SETTINGS = ('window_s', 'min_rate_hz', 'silence_timeout_s', 'calibration_dense_ms')


def _level(value: Any) -> int:
    """DiagnosticStatus.level arrives as a one-byte bytes object in rclpy."""
    if isinstance(value, (bytes, bytearray)):
        return value[0] if value else OK
    return int(value)


class DiagnosticsNode(Node):
    """Rolling statistics of the policy node, published on /diagnostics."""

    def __init__(self, node_name: str = 'diagnostics_node', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        specs = diagnostics_parameters()
        self._specs = spec_by_name(specs)
        declare(self, specs)
        values = read_all(self, specs)
        self.monitor = PolicyMonitor(
            window_s=values['window_s'],
            min_rate_hz=values['min_rate_hz'],
            silence_timeout_s=values['silence_timeout_s'],
            calibration_dense_ms=values['calibration_dense_ms'],
        )
        self._hardware_id = values['hardware_id']
        self.last_report: Optional[HealthReport] = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_subscription(PruningStats, 'pruning_stats', self._on_stats, 10)
        self.create_subscription(DiagnosticStatus, 'policy_status', self._on_status, 10)
        self._updater = self._make_updater(values['period_s'])
        if self._updater is None:
            self._publisher = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
            self.create_timer(values['period_s'], self._publish)

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _make_updater(self, period_s: float) -> Any:
        try:
            from diagnostic_updater import Updater
        except ImportError:
            return None
        try:
            updater = Updater(self, period=period_s)
            updater.setHardwareID(self._hardware_id or 'vla_pruned_ros')
            updater.add(TASK_NAME, self._fill)
        except Exception as err:  # an incompatible release: use the plain path
            self.get_logger().warning(f'diagnostic_updater unusable ({err}); publishing directly')
            return None
        return updater

    # ------------------------------------------------------------------------ inputs
    def _on_stats(self, msg: PruningStats) -> None:
        self.monitor.add_step(StepSample.from_stats(msg), self._now_s())

    def _on_status(self, msg: DiagnosticStatus) -> None:
        values = [(kv.key, kv.value) for kv in msg.values]
        self.monitor.add_status(_level(msg.level), msg.message, values, self._now_s())

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        updates = {p.name: p.value for p in parameters if p.name in self._specs}
        for name, value in updates.items():
            problem = check_value(self._specs[name], value)
            if problem is not None:
                return SetParametersResult(successful=False, reason=problem)
        try:
            self.monitor.configure(**{k: v for k, v in updates.items() if k in LIVE_SETTINGS})
        except ValueError as err:
            return SetParametersResult(successful=False, reason=str(err))
        if 'hardware_id' in updates:
            self._hardware_id = updates['hardware_id']
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------- outputs
    def _report(self) -> HealthReport:
        report = self.monitor.report(self._now_s())
        self.last_report = report
        # rclpy fixes a logging call site's severity on first use: one call per severity.
        if report.level == OK:
            self.get_logger().info(report.line)
        else:
            self.get_logger().warning(report.line)
        return report

    def _hardware(self, report: HealthReport) -> str:
        return self._hardware_id or report.value('device') or 'vla_pruned_ros'

    def _fill(self, stat: Any) -> Any:
        """diagnostic_updater task: fill ``stat`` from a fresh report."""
        report = self._report()
        stat.summary(bytes([report.level]), report.message)
        for key, value in report.values:
            stat.add(key, value)
        self._updater.setHardwareID(self._hardware(report))
        return stat

    def _publish(self) -> None:
        report = self._report()
        status = DiagnosticStatus(
            level=bytes([report.level]),
            name=f'{self.get_name()}: {TASK_NAME}',
            message=report.message,
            hardware_id=self._hardware(report),
            values=[KeyValue(key=k, value=v) for k, v in report.values],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._publisher.publish(array)


def main(argv: Optional[list] = None) -> int:
    """Console script ``diagnostics_node``."""
    from vla_pruned_ros.nodes.runtime import parse_cli, spin_nodes

    _, args = parse_cli('diagnostics_node', DESCRIPTION, argv)
    return spin_nodes([DiagnosticsNode], args, num_threads=2)
