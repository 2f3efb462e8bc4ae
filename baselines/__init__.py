"""Prior training-free skipping methods, each a ``litestage_bench.methods.Method``.

Each module registers its method with ``@litestage_bench.methods.register(name)`` when imported;
import it here so that ``make_method`` finds it. (The baselines arrive with their own issues.)
"""
