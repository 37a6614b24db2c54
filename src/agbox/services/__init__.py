"""The platform's services: keys, sessions and their lifecycle, tools. No web framework in here."""
