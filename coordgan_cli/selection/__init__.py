"""Choosing which images to annotate: global descriptors (``descriptors``), selection over them
(``select``), reading a propagate output folder (``runs``) and the whole ``coordgan suggest`` as a
function (``run.suggest_images``)."""
