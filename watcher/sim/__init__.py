"""The CBR simulator: a faithful fake of the operation-log API for tests, demos and trials."""

from watcher.sim.dialects import PRESETS, Dialect
from watcher.sim.faults import FaultProfile
from watcher.sim.policies import PolicySpec
from watcher.sim.scenario import Scenario, builtin_scenario, load_scenario
from watcher.sim.simulator import DEFAULT_PROJECT_ID, DEFAULT_TOKENS, SimRequest, Simulator
from watcher.sim.tasks import SimTaskSpec, TaskState

__all__ = [
    "DEFAULT_PROJECT_ID",
    "DEFAULT_TOKENS",
    "PRESETS",
    "Dialect",
    "FaultProfile",
    "PolicySpec",
    "Scenario",
    "SimRequest",
    "SimTaskSpec",
    "Simulator",
    "TaskState",
    "builtin_scenario",
    "load_scenario",
]
