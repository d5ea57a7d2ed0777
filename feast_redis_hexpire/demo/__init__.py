"""The interactive demo: a web page over a real Feast store on this plugin.

``feast-hexpire demo`` starts a local Redis (unless ``--redis`` is given), a copy of the sample
repo, a streaming worker that pushes through ``FeatureStore.push()`` and the web server. See
docs/DEMO.md.
"""
