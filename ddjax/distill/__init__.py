"""Distillers: one module per method (its math and its registration), the shared interface
(`ddjax.distill.base`), the step (`ddjax.distill.step`), BiLP's wrapper, IDC's set
parameterisation and the expert trajectory buffers of trajectory matching
(`ddjax.distill.experts`, which registers no method).

Kept import-light: the registry imports the method modules when it is first used.
"""
