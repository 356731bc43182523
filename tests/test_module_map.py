"""docs/modules.md is the one map of the package: each folder's table names exactly the files in that folder, so a
module added, moved or removed without the map fails here, naming the file and the section."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = REPO_ROOT / "modeling_cliptt5"
MAP = REPO_ROOT / "docs" / "modules.md"
ROOT_SECTION = "modeling_cliptt5/"


def files_in(folder, recursive=True):
    """Module and template files of a package folder, as the map names them (relative to the folder); the root
    lists its subfolders of data (configs/) too, not the subpackages that have sections of their own."""
    pattern = "**/*" if recursive else "*"
    names = {path.relative_to(folder).as_posix() for path in folder.glob(pattern)
             if path.is_file() and path.suffix in (".py", ".md") and path.name != "__init__.py"
             and "__pycache__" not in path.parts}
    if not recursive:
        names |= {f"{path.name}/" for path in folder.iterdir()
                  if path.is_dir() and not (path / "__init__.py").exists() and path.name != "__pycache__"}
    return names


def mapped_sections(text):
    """{folder: {file named in the first column of its table}} from the `## \\`folder/\\`` sections of the map."""
    sections, current = {}, None
    for line in text.splitlines():
        heading = re.match(r"## `([^`]+)`", line)
        if heading:
            current = heading.group(1)
            sections[current] = set()
        elif line.startswith("## "):
            current = None
        elif current and line.startswith("| `"):
            first_column = line.split("|")[1]
            sections[current] |= set(re.findall(r"`([^`]+)`", first_column))
    return sections


def test_every_folder_of_the_package_has_a_section_that_names_exactly_its_files():
    sections = mapped_sections(MAP.read_text(encoding="utf-8"))
    folders = {f"{path.name}/": path for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert set(sections) == {ROOT_SECTION, *folders}, "docs/modules.md: one section per folder of the package"
    expected = {ROOT_SECTION: files_in(PACKAGE, recursive=False)}
    expected.update({name: files_in(path) for name, path in folders.items()})
    for section, files in expected.items():
        missing, extra = sorted(files - sections[section]), sorted(sections[section] - files)
        assert not missing and not extra, (f"docs/modules.md, section `{section}`: not in the map {missing}, "
                                           f"in the map but not in the folder {extra}")


def test_the_package_root_holds_the_release_files_and_init_only():
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "configuration_cliptt5.py", "modeling_cliptt5.py", "processing_cliptt5.py"]
