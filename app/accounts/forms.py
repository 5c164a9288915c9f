"""Sign-in and registration forms (Flask-WTF: every form carries a CSRF token)."""

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, Length


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
