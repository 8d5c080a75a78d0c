"""The techniques autoaccel searches, one module (or one package) each, registered on import.

``base`` holds the ``Technique`` interface and the registry; it imports none of the techniques: the registry
imports the built-in ones by name (``base.BUILTIN_MODULES``) the first time it is read, so importing one technique
does not import the others. A technique written outside autoaccel registers itself the same way, by calling
``register`` when its module is imported.
"""
