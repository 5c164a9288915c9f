"""Account forms: sign-in, registration, email links, password and profile (Flask-WTF: every form has a CSRF token)."""

import re
from datetime import date
from functools import lru_cache
from urllib.parse import urlsplit

from babel.support import Translations
from flask_babel import get_locale
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm as _FlaskForm
from wtforms.i18n import messages_path
from wtforms import EmailField, HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length, Optional, ValidationError


@lru_cache(maxsize=16)  # one per supported locale
def _wtforms_messages(locale: str) -> Translations:
    return Translations.load(messages_path(), [locale], domain="wtforms")


class FlaskForm(_FlaskForm):
    """Flask-WTF's form, with WTForms' own messages in the page's language read from disk once per language.

    Flask-WTF parses WTForms' message catalogue again on every request that builds a form (about a millisecond).
    """

    class Meta(_FlaskForm.Meta):
        def get_translations(self, form):
            return _wtforms_messages(str(get_locale()))


class LoginForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=320)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=1024)])
    interaction = HiddenField()


class RegisterForm(FlaskForm):
    name = StringField(_l("Name"), validators=[Length(max=255)])
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=320)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(min=8, max=1024)])
    interaction = HiddenField()


class ChoiceForm(FlaskForm):
    """A form whose only input is which button was pressed."""

    interaction = HiddenField()


class ForgotPasswordForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=320)])


class ResetPasswordForm(FlaskForm):
    token = HiddenField()
    password = PasswordField(_l("New password"), validators=[
        DataRequired(), Length(min=8, max=1024, message=_l("Use a password of at least 8 characters."))])
    confirm = PasswordField(_l("Repeat the new password"),
                            validators=[DataRequired(), EqualTo("password", message=_l("The passwords do not match."))])


class ConfirmLinkForm(FlaskForm):
    """The button behind an emailed link (a GET never uses the link up: mail scanners prefetch links)."""

    token = HiddenField()


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField(_l("Current password"), validators=[DataRequired(), Length(max=1024)])
    new_password = PasswordField(_l("New password"), validators=[
        DataRequired(), Length(min=8, max=1024, message=_l("Use a password of at least 8 characters."))])
    confirm = PasswordField(_l("Repeat the new password"), validators=[
        DataRequired(), EqualTo("new_password", message=_l("The passwords do not match."))])


class ChangeEmailForm(FlaskForm):
    new_email = EmailField(_l("New email address"), validators=[DataRequired(), Length(max=320)])


# -- profile (OpenID Connect Core §5.1 standard claims) ---------------------------------------------------------------


def _blank_to_none(value):
    """Trimmed text, and None for an empty field: the database stores NULL, never ""."""
    if value is None:
        return None
    value = value.strip()
    return value or None


_BIRTHDATE = re.compile(r"(\d{4})(?:-(\d{2})-(\d{2}))?")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")
_PHONE = re.compile(r"\+?[0-9 ().-]{3,40}(?:;ext=[0-9]{1,10})?")


def _valid_birthdate(form, field):
    """YYYY-MM-DD, 0000-MM-DD (year withheld) or YYYY (year only), as OIDC Core §5.1 allows."""
    if field.data is None:
        return
    m = _BIRTHDATE.fullmatch(field.data)
    message = _l("Enter the date as YYYY-MM-DD (0000-MM-DD without the year, or just YYYY).")
    if not m:
        raise ValidationError(message)
    year, month, day = m.group(1), m.group(2), m.group(3)
    if month is None:
        if year == "0000":
            raise ValidationError(message)
        return
    try:
        # Year 0000 means "not given": check the day in a leap year so 0000-02-29 is accepted.
        when = date(2000 if year == "0000" else int(year), int(month), int(day))
    except ValueError:
        raise ValidationError(_l("This date does not exist.")) from None
    if year != "0000" and when > date.today():
        raise ValidationError(_l("The date of birth cannot be in the future."))


def _valid_url(form, field):
    if field.data is None:
        return
    parts = urlsplit(field.data)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in field.data:
        raise ValidationError(_l("Enter a full web address starting with https://."))


def _valid_zoneinfo(form, field):
    if field.data is not None and field.data not in _zones():
        raise ValidationError(_l("Choose a time zone such as Europe/Istanbul."))


def _zones() -> set[str]:
    import zoneinfo

    return zoneinfo.available_timezones()


def _valid_locale(form, field):
    if field.data is not None and not _LOCALE.fullmatch(field.data):
        raise ValidationError(_l("Enter a language tag such as en-GB or tr-TR."))


def _valid_phone(form, field):
    if field.data is not None and (not _PHONE.fullmatch(field.data) or sum(c.isdigit() for c in field.data) < 3):
        raise ValidationError(_l("Enter a phone number such as +90 212 555 0100."))


def _text(label, max_length, *extra):
    return StringField(label, filters=[_blank_to_none], validators=[
        Optional(), Length(max=max_length, message=_l("Use at most %(max)d characters.", max=max_length)), *extra])


class ProfileForm(FlaskForm):
    name = _text(_l("Full name"), 255)
    given_name = _text(_l("Given name"), 255)
    middle_name = _text(_l("Middle name"), 255)
    family_name = _text(_l("Family name"), 255)
    nickname = _text(_l("Nickname"), 255)
    preferred_username = _text(_l("Preferred username"), 255)
    website = _text(_l("Website"), 2048, _valid_url)
    picture = _text(_l("Picture (web address)"), 2048, _valid_url)
    gender = _text(_l("Gender"), 64)
    birthdate = _text(_l("Date of birth"), 10, _valid_birthdate)
    zoneinfo = _text(_l("Time zone"), 64, _valid_zoneinfo)
    locale = _text(_l("Language and region"), 35, _valid_locale)
    phone_number = _text(_l("Phone number"), 64, _valid_phone)
    street_address = _text(_l("Street address"), 255)
    locality = _text(_l("Town or city"), 255)
    region = _text(_l("State, province or region"), 255)
    postal_code = _text(_l("Postal code"), 64)
    country = _text(_l("Country"), 255)

    PROFILE_FIELDS = ("name", "given_name", "middle_name", "family_name", "nickname", "preferred_username",
                      "website", "picture", "gender", "birthdate", "zoneinfo", "locale", "phone_number")
    ADDRESS_FIELDS = ("street_address", "locality", "region", "postal_code", "country")
