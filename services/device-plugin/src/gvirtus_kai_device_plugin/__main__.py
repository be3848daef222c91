"""``python -m gvirtus_kai_device_plugin``: the same as the ``gvirtus-device-plugin`` command."""

from gvirtus_kai_device_plugin.main import main

if __name__ == "__main__":
    main()
