from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_is_the_shipped_example():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    example = (ROOT / "examples" / "readme.py").read_text()
    assert example.split("\n", 2)[2] == block, "README.md's example and examples/readme.py differ"
