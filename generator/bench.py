"""``python -m generator.bench`` is ``python -m launch.bench_gpt``
(kept so that older commands work).

An entry point lives above the packages it uses (launch/); this alias runs it only as a
command and is never imported by library code (tests/test_layers.py checks both).
"""

if __name__ == "__main__":
    import runpy

    runpy.run_module("launch.bench_gpt", run_name="__main__", alter_sys=True)
