"""The shipped list of high-risk and premium destination prefixes (international revenue
share fraud, IRSF), used by `risk_destination` rules of a tenant that has not saved its own
list (`PUT /api/v1/dest-lists/risk`; docs/rules.md).

Prefixes are E.164 digits without '+', country code included, like `dial_prefix.prefix`.
The choice follows the ranges that fraud reports (CFCA, GSMA, carriers' IRSF test-number
lists) keep naming: non-geographic international networks and satellite services, the
international premium rate code, small Pacific, Atlantic and African destinations with high
termination rates, Caribbean NANP codes used by "one ring" callback scams, and UK premium
ranges. A tenant whose customers really call some of them edits its list or whitelists them.
"""

from __future__ import annotations

DEFAULTS: tuple[tuple[str, str], ...] = (
    # Non-geographic: satellite, international networks, premium rate.
    ("870", "Inmarsat SNAC"),
    ("881", "Global Mobile Satellite System (Iridium, Globalstar...)"),
    ("882", "International Networks"),
    ("883", "International Networks"),
    ("979", "International Premium Rate Service"),
    # Pacific.
    ("670", "Timor-Leste"),
    ("672", "Norfolk Island / Australian Antarctic"),
    ("674", "Nauru"),
    ("675", "Papua New Guinea"),
    ("676", "Tonga"),
    ("677", "Solomon Islands"),
    ("678", "Vanuatu"),
    ("679", "Fiji"),
    ("680", "Palau"),
    ("681", "Wallis and Futuna"),
    ("682", "Cook Islands"),
    ("683", "Niue"),
    ("685", "Samoa"),
    ("686", "Kiribati"),
    ("688", "Tuvalu"),
    ("690", "Tokelau"),
    ("691", "Micronesia"),
    ("692", "Marshall Islands"),
    # Atlantic and Indian Ocean islands.
    ("246", "Diego Garcia"),
    ("247", "Ascension"),
    ("290", "Saint Helena / Tristan da Cunha"),
    ("500", "Falkland Islands"),
    ("960", "Maldives"),
    # Africa.
    ("220", "Gambia"),
    ("222", "Mauritania"),
    ("224", "Guinea"),
    ("231", "Liberia"),
    ("232", "Sierra Leone"),
    ("235", "Chad"),
    ("239", "Sao Tome and Principe"),
    ("252", "Somalia"),
    ("269", "Comoros"),
    ("291", "Eritrea"),
    # Others often named in IRSF reports.
    ("53", "Cuba"),
    ("850", "North Korea"),
    # Caribbean NANP codes of "one ring" (wangiri) callback scams.
    ("1268", "Antigua and Barbuda"),
    ("1284", "British Virgin Islands"),
    ("1473", "Grenada"),
    ("1649", "Turks and Caicos"),
    ("1664", "Montserrat"),
    ("1767", "Dominica"),
    ("1809", "Dominican Republic"),
    ("1829", "Dominican Republic"),
    ("1849", "Dominican Republic"),
    ("1876", "Jamaica"),
    # UK premium rate.
    ("449", "UK premium rate (09)"),
    ("4487", "UK premium rate (087)"),
)
"""(prefix, note): the default 'risk' list."""
