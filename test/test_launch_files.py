"""launch/*.launch.xml and config/m2a.rviz, checked without ROS's launch (not installable here: ROS2_ON_PIP.md).

The launch files are parsed as XML and their substitutions ($(var), $(find-pkg-share m2a), $(eval)) evaluated
here with the argument defaults, then checked against the code: executables are installed, parameter files
and overrides name only parameters the node declares, remaps name the node's topics, the player's arguments
parse, and RViz shows the topics the node publishes in the launch files' namespace.
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

from m2a_perception import replay
from m2a_perception.node import OUTPUTS, PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
PERCEPTION = LAUNCH / "m2a_perception.launch.xml"
REPLAY = LAUNCH / "m2a_replay.launch.xml"
# Executables of other ROS packages the launch files may start (they come with a ROS distribution).
EXTERNAL = {("v4l2_camera", "v4l2_camera_node"), ("rviz2", "rviz2")}
_INNERMOST = re.compile(r"\$\(([a-z-]+)\s*((?:[^()$]|\([^()$]*\))*?)\)")


def _parse(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _defaults(root: ET.Element, **given: str) -> dict[str, str]:
    """Argument values: `given`, else each <arg>'s default (evaluated in order, as launch does)."""
    values: dict[str, str] = {}
    for element in root:
        if element.tag in ("arg", "let"):
            name = element.get("name")
            if name in given:
                values[name] = given[name]
            elif element.get("default") is not None:
                values[name] = _resolve(element.get("default"), values)
            elif element.get("value") is not None:
                values[name] = _resolve(element.get("value"), values)
    return values


def _resolve(text: str, values: dict[str, str]) -> str:
    """Evaluate $(var), $(find-pkg-share m2a) and $(eval) substitutions, innermost first."""
    while (match := _INNERMOST.search(text)) is not None:
        kind, argument = match.group(1), match.group(2).strip()
        if kind == "var":
            assert argument in values, f"$(var {argument}) has no value (declared <arg> without default?)"
            value = values[argument]
        elif kind == "find-pkg-share":
            assert argument == "m2a", f"$(find-pkg-share {argument}): only our own package resolves here"
            value = str(ROOT)  # the source tree has what CMake installs to share/m2a (launch/, config/)
        elif kind == "eval":
            value = str(eval(shlex.split(argument)[0], {"__builtins__": {}}))  # noqa: S307 - our own file
        else:
            raise AssertionError(f"substitution $({kind} ...) not understood by this test: {match.group(0)}")
        text = text[: match.start()] + value + text[match.end() :]
    return text


def _active(element: ET.Element, values: dict[str, str]) -> bool:
    """Whether an element's if / unless condition lets it run."""
    truth = {"true": True, "1": True, "false": False, "0": False}
    if element.get("if") is not None and not truth[_resolve(element.get("if"), values).lower()]:
        return False
    return not (element.get("unless") is not None and truth[_resolve(element.get("unless"), values).lower()])


def _nodes(root: ET.Element, values: dict[str, str]) -> list[ET.Element]:
    return [node for node in root.iter("node") if _active(node, values)]


def _cmdline(text: str, values: dict[str, str]) -> list[str]:
    """Split a node's `args` like launch's ExecuteProcess._parse_cmdline: text is shlex-split, a substitution
    stays one argument (possibly empty)."""
    args: list[str] = []
    current: list[str] | None = None
    for index, piece in enumerate(re.split(r"(\$\([^)]*\))", text)):
        if index % 2:  # a substitution
            current = (current or []) + [_resolve(piece, values)]
            continue
        if not piece:
            continue
        tokens = shlex.split(piece)
        if piece[0].isspace() and current is not None:
            args.append("".join(current))
            current = None
        if tokens:
            current = (current or []) + [tokens[0]]
            for token in tokens[1:]:
                args.append("".join(current))
                current = [token]
        if piece[-1].isspace() and current is not None:
            args.append("".join(current))
            current = None
    if current is not None:
        args.append("".join(current))
    return args


def _installed_programs() -> set[str]:
    """Names CMakeLists.txt installs into lib/${PROJECT_NAME} (what `ros2 run m2a NAME` finds)."""
    cmake = (ROOT / "CMakeLists.txt").read_text()
    names = set()
    for body in re.findall(r"install\(\s*PROGRAMS\s+([^)]*?)DESTINATION\s+lib/\$\{PROJECT_NAME\}", cmake):
        names.update(Path(p).name for p in body.split())
    return names


def _node_topics() -> set[str]:
    """The node's relative topic names: subscriptions (read from node.py), outputs, diagnostics."""
    source = (ROOT / "m2a_perception" / "node.py").read_text()
    inputs = set(re.findall(r"create_subscription\(\s*\w+,\s*\"([^\"]+)\"", source))
    assert inputs == {"image", "image/compressed"}, f"node subscriptions changed: {inputs}"
    return inputs | {topic for _, topic in OUTPUTS.values()} | {"diagnostics"}


@pytest.mark.parametrize("path", [PERCEPTION, REPLAY], ids=lambda p: p.name)
def test_every_substitution_names_a_declared_argument(path: Path) -> None:
    root = _parse(path)
    assert root.tag == "launch"
    declared = {e.get("name") for e in root if e.tag in ("arg", "let")}
    used = set(re.findall(r"\$\(var\s+([\w]+)\)", path.read_text()))
    assert used <= declared, f"{path.name}: $(var) of undeclared arguments {sorted(used - declared)}"
    for arg in root.findall("arg"):
        assert arg.get("description"), f"{path.name}: <arg name={arg.get('name')!r}> has no description"


@pytest.mark.parametrize("path", [PERCEPTION, REPLAY], ids=lambda p: p.name)
def test_node_executables_exist(path: Path) -> None:
    root = _parse(path)
    programs = _installed_programs()
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.value.startswith("m2a_")}
    for node in root.iter("node"):
        pkg, exe = node.get("pkg"), node.get("exec")
        if pkg != "m2a":
            assert (pkg, exe) in EXTERNAL, f"{path.name}: unknown executable {pkg}/{exe}"
            continue
        assert exe in programs, f"{path.name}: {exe} is not installed by CMakeLists.txt (install(PROGRAMS ...))"
        launcher = ROOT / "scripts" / exe
        assert launcher.is_file() and launcher.stat().st_mode & 0o111, f"scripts/{exe} missing or not executable"
        module = re.search(r"from (m2a_perception\.\w+) import main", launcher.read_text())
        assert module, f"scripts/{exe} does not start an m2a_perception module's main"
        # the same entry point for pip users (an installed console script)
        assert f"{module.group(1)}:main" in scripts.values(), f"no console script runs {module.group(1)}:main"
        __import__(module.group(1))


def test_params_file_holds_only_parameters_the_node_declares() -> None:
    root = _parse(PERCEPTION)
    values = _defaults(root)
    files = [_resolve(p.get("from"), values) for node in root.iter("node") for p in node.iter("param") if p.get("from")]
    assert files and set(files) == {str(ROOT / "config" / "m2a_perception.yaml")}
    data = yaml.safe_load(Path(files[0]).read_text())
    declared = {spec.name: spec.default for spec in PARAMETERS}
    for section, body in data.items():
        params = body["ros__parameters"]
        unknown = set(params) - set(declared)
        assert not unknown, f"{files[0]} section {section!r}: parameters the node does not declare: {unknown}"
        for name, value in params.items():
            assert type(value) is type(declared[name]), f"{name}: {value!r} is not a {type(declared[name]).__name__}"
    # and the file is one the node accepts for the launch files' node name and namespace
    replay.node_parameters(files[0], namespace="/" + values["namespace"])


def test_overrides_and_remaps_use_the_node_names() -> None:
    declared = {spec.name for spec in PARAMETERS}
    topics = _node_topics()
    for path in (PERCEPTION, REPLAY):
        for node in _parse(path).iter("node"):
            if node.get("pkg") != "m2a" or node.get("exec") != "anomaly_segmentation":
                continue
            for param in node.iter("param"):
                if param.get("name") is not None:
                    assert param.get("name") in declared, f"{path.name}: unknown parameter {param.get('name')}"
            remaps = {remap.get("from") for remap in node.iter("remap")}
            assert remaps and remaps <= topics, f"{path.name}: remaps {remaps - topics} are not node topics"
            assert {"image", "image/compressed"} <= remaps, "both inputs must follow image_topic"


@pytest.mark.parametrize("model_path", ["", "/models/m2a.pt"])
def test_model_path_overrides_the_params_file_only_when_given(model_path: str) -> None:
    root = _parse(PERCEPTION)
    values = _defaults(root, model_path=model_path)
    nodes = [n for n in _nodes(root, values) if n.get("exec") == "anomaly_segmentation"]
    assert len(nodes) == 1, f"model_path={model_path!r}: {len(nodes)} node declarations active, expected 1"
    overrides = {p.get("name"): _resolve(p.get("value"), values) for p in nodes[0].iter("param") if p.get("name")}
    assert overrides == ({"model_path": model_path} if model_path else {})
    # the two declarations differ only in that override
    both = [n for n in root.iter("node") if n.get("exec") == "anomaly_segmentation"]
    keys = [
        (
            {k: v for k, v in n.attrib.items() if k not in ("if", "unless")},
            [(c.tag, sorted(c.attrib.items())) for c in n if c.get("name") != "model_path"],
        )
        for n in both
    ]
    assert len(both) == 2 and keys[0] == keys[1]


def test_camera_driver_starts_only_when_asked() -> None:
    root = _parse(PERCEPTION)
    for start, expected in (("false", 0), ("true", 1)):
        cameras = [n for n in _nodes(root, _defaults(root, start_camera=start)) if n.get("pkg") == "v4l2_camera"]
        assert len(cameras) == expected
    camera = next(n for n in root.iter("node") if n.get("pkg") == "v4l2_camera")
    remap = camera.find("remap")
    assert _resolve(remap.get("to"), _defaults(root)) == _defaults(root)["image_topic"]


def test_replay_launch_plays_into_the_node_input() -> None:
    root = _parse(REPLAY)
    values = _defaults(root, bag="/data/drive_bag")
    include = root.find("include")
    included = Path(_resolve(include.get("file"), values))
    assert included == PERCEPTION
    passed = {a.get("name"): _resolve(a.get("value"), values) for a in include.findall("arg")}
    assert set(passed) <= {a.get("name") for a in _parse(PERCEPTION).findall("arg")}
    # the node hears `image` in the namespace, the player publishes `image` in the same namespace
    assert passed["image_topic"] == "image" and passed["namespace"] == values["namespace"]
    player = next(n for n in root.iter("node") if n.get("exec") == "replay")
    assert _resolve(player.get("namespace"), values) == values["namespace"]
    argv = _cmdline(player.get("args"), values)
    args = replay._parser().parse_args(argv)
    assert args.command == "play" and args.bag == "/data/drive_bag"
    assert (args.topic, args.rate, args.loop, args.start_offset) == ("", 1.0, False, 0.0)
    assert args.wait_for_subscriber > 0
    config = replay.PlayConfig(topic=args.topic or None, out_topic=args.out_topic or None, loop=args.loop)
    assert config.topic is None and config.out_topic is None  # -> the bag's only image topic, published on `image`
    looping = replay._parser().parse_args(_cmdline(player.get("args"), _defaults(root, bag="b", loop="true")))
    assert looping.loop is True
    rviz = next(n for n in root.iter("node") if n.get("pkg") == "rviz2")
    config_file = Path(_cmdline(rviz.get("args"), values)[1])
    assert config_file == ROOT / "config" / "m2a.rviz"
    assert [n.get("pkg") for n in _nodes(root, _defaults(root, bag="b", rviz="false"))].count("rviz2") == 0


def test_rviz_shows_overlay_mask_and_semantic_colours_of_the_launched_node() -> None:
    config = yaml.safe_load((ROOT / "config" / "m2a.rviz").read_text())
    displays = config["Visualization Manager"]["Displays"]
    namespace = _defaults(_parse(REPLAY), bag="b")["namespace"]
    assert namespace == _defaults(_parse(PERCEPTION))["namespace"]
    expected = {f"/{namespace}/{OUTPUTS[key][1]}" for key in ("overlay", "mask", "semantic_color")}
    images = [d for d in displays if d["Class"] == "rviz_default_plugins/Image"]
    assert {d["Topic"]["Value"] for d in images} == expected
    for display in images:
        assert display["Enabled"] is True
        # best effort receives from reliable and best-effort publishers alike
        assert display["Topic"]["Reliability Policy"] == "Best Effort"


def test_cmdline_splitting_matches_launch() -> None:
    values = {"a": "", "b": "x y"}
    assert _cmdline("play $(var b) --topic $(var a) --rate 2", values) == ["play", "x y", "--topic", "", "--rate", "2"]
    assert _cmdline("-d $(var b)/c.rviz", values) == ["-d", "x y/c.rviz"]


def test_large_data_profile_is_a_fast_dds_profile() -> None:
    ns = {"d": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    root = _parse(ROOT / "config" / "fastdds_large_data.xml")
    shm = [
        t
        for t in root.iterfind("d:transport_descriptors/d:transport_descriptor", ns)
        if t.findtext("d:type", "", ns) == "SHM"
    ]
    assert (
        len(shm) == 1 and int(shm[0].findtext("d:segment_size", "0", ns)) >= 32 * 2**20
    )  # > a 1024x2048 score + result
    participant = root.find("d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    used = {t.text for t in participant.iterfind("d:rtps/d:userTransports/d:transport_id", ns)}
    declared = {
        t.findtext("d:transport_id", "", ns)
        for t in root.iterfind("d:transport_descriptors/d:transport_descriptor", ns)
    }
    assert used == declared and participant.findtext("d:rtps/d:useBuiltinTransports", "", ns) == "false"
