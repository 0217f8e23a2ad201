"""SmartLab's IPython profile: a Bluesky session with live analysis published to Tiled.

Reads SMARTLAB_TILED_URI and SMARTLAB_API_KEY; without them, starts the
embedded Tiled server for the session.
"""

from smartlab_plugins.session import start_session

globals().update(start_session())
del start_session
