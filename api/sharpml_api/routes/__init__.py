"""The HTTP routes, a few lines each: they take their inputs from :mod:`sharpml_api.deps` and leave
the work to the services (:mod:`sharpml_api.submit`, :mod:`sharpml_api.jobs`)."""
