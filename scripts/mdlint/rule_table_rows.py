"""
scripts/mdlint/rule_table_rows.py: a pymarkdownlnt rule (SNB001, table-rows-outside-table) for the
one table mistake no built-in rule sees: rows written without a header row or without the
`|---|` delimiter row under it (or a header and delimiter with different cell counts). A GFM
renderer then shows no table but a paragraph of pipes, and the table rules (MD055, MD056,
MD058), which look only at tables, say nothing. So: any paragraph line that starts with `|`
is reported. Loaded through `plugins.additional_paths` in .pymarkdown.yml.
"""

from typing import List, Optional

from pymarkdown.plugin_manager.plugin_details import PluginDetailsV2
from pymarkdown.plugin_manager.plugin_scan_context import PluginScanContext
from pymarkdown.plugin_manager.rule_plugin import RulePlugin
from pymarkdown.tokens.markdown_token import MarkdownToken


class RuleTableRows(RulePlugin):
    """Reports paragraph lines that start with a pipe: table rows that are not in a table."""

    def __init__(self) -> None:
        super().__init__()
        self.__paragraph: Optional[MarkdownToken] = None
        self.__text: List[str] = []

    def get_details(self) -> PluginDetailsV2:
        return PluginDetailsV2(
            plugin_name="table-rows-outside-table",
            plugin_id="snb001",
            plugin_enabled_by_default=True,
            plugin_description="Table rows without a header row and a delimiter row "
            + "under it (not rendered as a table)",
            plugin_version="0.1.0",
            plugin_url="scripts/mdlint/rule_table_rows.py",
            plugin_supports_fix=False,
        )

    def starting_new_file(self) -> None:
        self.__paragraph = None
        self.__text = []

    def next_token(self, context: PluginScanContext, token: MarkdownToken) -> None:
        if token.is_paragraph:
            self.__paragraph, self.__text = token, []
        elif token.is_paragraph_end:
            self.__check(context)
            self.__paragraph = None
        elif self.__paragraph is not None:
            # The paragraph's text, line breaks kept; an inline element other than text (a code
            # span, a link) stands for a character that is not a pipe.
            self.__text.append(getattr(token, "token_text", "x") if token.is_text else "x")

    def __check(self, context: PluginScanContext) -> None:
        assert self.__paragraph is not None
        for delta, line in enumerate("".join(self.__text).split("\n")):
            if line.lstrip().startswith("|"):
                self.report_next_token_error(
                    context, self.__paragraph, line_number_delta=delta
                )
