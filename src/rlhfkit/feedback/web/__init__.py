"""The feedback app's HTTP layer, composed by ``rlhfkit.feedback.app.create_app``.

- ``context``: :class:`AppContext` (store, log-in throttle, templates, settings) on
  ``app.state.ctx``, read by every route through the ``Ctx`` dependency; limits, cookie names;
- ``deps``: who is asking -- sessions, CSRF, the admin role (``api_user``, ``api_admin``,
  ``page_user``, ``page_admin``);
- ``schemas``: the JSON API's request bodies;
- ``actions``: what the JSON API and the pages both do (log-in, projects, users, members, the
  import and the export), on an ``AppContext``;
- ``upload``: the file import's multipart body, read after the admin check, and its gzip;
- ``flash``: messages for the admin pages, carried by a cookie the server signs (never by the link);
- routers: ``api`` (log-in and labelling, ``/api``), ``admin_api`` (``/api/admin``), ``pages``
  (log-in, projects, labelling pages) and ``admin_pages`` (``/admin``).
"""
