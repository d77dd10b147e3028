"""Distillers: one module per method (its math and its registration), the shared interface
(`ddjax.distill.base`), the step (`ddjax.distill.step`) and the wrappers (BiLP, IDC).

Kept import-light: the registry imports the method modules when it is first used.
"""
