"""The package's commands (cliptt5-train, cliptt5-generate, cliptt5-app, cliptt5-convert-*): argument parsing over the
library. Library code never imports them."""
